"""Text-to-audio pipelines: a frozen text encoder → a generator → a decoder to audio, behind one call.

``audiogen``: :class:`AudioGenPipeline` (course text encoder → :class:`~course_lib.lm.AudioLM` over codec
tokens → :class:`~course_lib.codecs.Codec` decoder), AudioGen's two stages put together::

    from course_lib.pipelines import AudioGenPipeline
    from course_lib.runtime import configure_threads
    configure_threads()                                     # one CPU thread: the course's policy (README)
    pipe = AudioGenPipeline.from_pretrained()              # the shipped LM, codec and text encoder
    audio = pipe(["a dog barks twice", "rain falls"], seconds=2.0)   # (2, 1, 32000) at 16 kHz

Pipelines sit above the models (``lm``, ``codecs``, ``text``) and below ``train``: nothing in the models
imports them. Like every library function they leave torch's thread count alone: the entry point (your script,
a lesson, a ``python -m course_lib.*`` command) calls :func:`course_lib.runtime.configure_threads` once.
"""

from course_lib.pipelines.audiogen import AudioGenPipeline, load_codec, load_lm
from course_lib.pipelines.diffsound import DiffsoundPipeline, grid_to_sequence, sequence_to_grid
from course_lib.pipelines.noise2music import Noise2MusicPipeline, Noise2MusicStage, Noise2MusicStageConfig

__all__ = ["AudioGenPipeline", "load_codec", "load_lm", "DiffsoundPipeline", "grid_to_sequence", "sequence_to_grid",
           "Noise2MusicPipeline", "Noise2MusicStage", "Noise2MusicStageConfig"]

# ``diffsound``: :class:`DiffsoundPipeline` (course text encoder → Diffsound's discrete-diffusion token decoder, or
# its AR baseline → mel VQ-VAE decoder → MelGAN or Griffin-Lim vocoder):
#     pipe = DiffsoundPipeline.from_pretrained()               # the shipped decoder, VQ-VAE, MelGAN and encoder
#     audio = pipe(["a dog barks twice"], seconds=2.0, steps=25)   # (1, 1, 32000) at 16 kHz

# ``noise2music``: :class:`Noise2MusicPipeline` (course text encoder → generator: a 1-D U-Net diffusion model that
# samples 3.2 kHz audio → cascader: a 1-D U-Net that samples 16 kHz audio given the upsampled low-rate audio):
#     pipe = Noise2MusicPipeline.from_pretrained()             # the shipped generator, cascader and encoder
#     low, audio = pipe(["a calm piano melody in C major at 90 bpm"], seconds=4.0, return_low=True)
