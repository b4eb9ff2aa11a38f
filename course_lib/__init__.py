"""course_lib: the library behind the notebooks of the audio-generation course.

One module per idea (see DESIGN.md): ``audio`` (I/O, STFT/mel, plots, listening), ``data`` (captioned
datasets and probes), ``runtime`` (run size, seeding, device), ``exercises`` (checks, generator, grader),
``train`` (the training engine). Import what you need; nothing here downloads anything.
"""

__version__ = "0.1.0"
