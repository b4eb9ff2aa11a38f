"""A small SoundFont 2 reader and sample player in NumPy: real sampled instruments, note by note.

A SoundFont (``.sf2``, SoundFont 2.04 specification, cited below as "SF2 §") is a RIFF file with three parts:

* ``sdta/smpl``: every recorded sample, one after the other, as 16-bit signed mono PCM (SF2 §6.1);
* ``pdta``, the "hydra" (SF2 §7): nine tables that say which sample plays for which note. A *preset*
  (``phdr``, addressed by MIDI bank and program) is a list of *zones* (``pbag``); each zone has *generators*
  (``pgen``: parameter, value) and points to an *instrument* (``inst``), which again has zones (``ibag``,
  ``igen``) that point to a *sample header* (``shdr``: where the sample lies in ``smpl``, its rate, its root
  key and loop points). A zone plays only for the keys and velocities in its ``keyRange`` / ``velRange``.

:func:`load_soundfont` parses a file once (cached per path) into a :class:`SoundFont`;
:meth:`SoundFont.zones` resolves ``(bank, program, key, velocity)`` into the :class:`Zone` s that sound, with
their generators merged as SF2 §9.4 prescribes; :func:`render_note` plays one note through them: it
resamples the recorded sample by the pitch ratio with linear interpolation, loops it between its loop points
while the key is held, and shapes it with the volume envelope (delay, attack, hold, decay, sustain, release).

Units, as in the specification: sample positions in *sample data points* of ``smpl``; times in *timecents*
(``seconds = 2 ** (timecents / 1200)``); levels in *centibels* of attenuation (``dB = cB / 10``); tuning in
semitones and cents. Left out, because a mono course dataset does not need them: modulators other than the
default velocity-to-attenuation one (SF2 §8.4.1), the low-pass filter, LFOs, the modulation envelope, pan,
reverb and chorus, 24-bit samples (``sm24``) and ROM samples.

:func:`default_soundfont_path` finds ``TimGM6mb.sf2``, the 6 MB General MIDI SoundFont that the
``pretty_midi`` wheel carries (MIT licence). Its percussion kits are presets of bank 128 (the General MIDI
channel-10 kits): bank 128, program 0 is the standard kit, where key 36 is a kick, 38 a snare, 42 a closed
hi-hat.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PERCUSSION_BANK = 128  # SF2 §7.2: presets of bank 128 are percussion kits (General MIDI channel 10)
DEFAULT_SOUNDFONT = "TimGM6mb.sf2"

# ---- generator numbers (SF2 §8.1.2) and their defaults (SF2 §8.1.3) ------------------------------------------

START_OFFSET, END_OFFSET, LOOP_START_OFFSET, LOOP_END_OFFSET = 0, 1, 2, 3
START_COARSE_OFFSET, END_COARSE_OFFSET = 4, 12
DELAY_VOL_ENV, ATTACK_VOL_ENV, HOLD_VOL_ENV, DECAY_VOL_ENV, SUSTAIN_VOL_ENV, RELEASE_VOL_ENV = 33, 34, 35, 36, 37, 38
KEY_TO_VOL_ENV_HOLD, KEY_TO_VOL_ENV_DECAY = 39, 40
INSTRUMENT, KEY_RANGE, VEL_RANGE = 41, 43, 44
LOOP_START_COARSE_OFFSET, LOOP_END_COARSE_OFFSET = 45, 50
INITIAL_ATTENUATION, COARSE_TUNE, FINE_TUNE, SAMPLE_ID, SAMPLE_MODES = 48, 51, 52, 53, 54
SCALE_TUNING, OVERRIDING_ROOT_KEY = 56, 58

_RANGE_GENERATORS = (KEY_RANGE, VEL_RANGE)  # two bytes (low, high) instead of one 16-bit value
_UNSIGNED_GENERATORS = (INSTRUMENT, SAMPLE_ID, SAMPLE_MODES)
# Generators an instrument sets but a preset may not touch (SF2 §8.5): sample addresses and modes, root key.
_INSTRUMENT_ONLY = (START_OFFSET, END_OFFSET, LOOP_START_OFFSET, LOOP_END_OFFSET, START_COARSE_OFFSET,
                    END_COARSE_OFFSET, LOOP_START_COARSE_OFFSET, LOOP_END_COARSE_OFFSET, SAMPLE_MODES,
                    OVERRIDING_ROOT_KEY, 46, 47, 57)  # 46, 47: keynum, velocity; 57: exclusiveClass
TIMECENTS_INSTANT = -12000  # the default of every envelope time: 2 ** -10 s, about 1 ms
DEFAULTS: dict[int, int] = {DELAY_VOL_ENV: TIMECENTS_INSTANT, ATTACK_VOL_ENV: TIMECENTS_INSTANT,
                            HOLD_VOL_ENV: TIMECENTS_INSTANT, DECAY_VOL_ENV: TIMECENTS_INSTANT,
                            RELEASE_VOL_ENV: TIMECENTS_INSTANT, SCALE_TUNING: 100, OVERRIDING_ROOT_KEY: -1}

SILENCE_DB = -100.0  # the volume envelope's 100% change (SF2 §8.1.3, decayVolEnv): 1000 cB = 100 dB


class SoundFontNotFoundError(FileNotFoundError):
    """No SoundFont file where one was expected (the message says what to install)."""


# ---- the parsed file -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleHeader:
    """One ``shdr`` record (SF2 §7.10). Positions index the file's ``smpl`` data (sample data points).

    ``end`` and ``loop_end`` point one past the last sample (the loop plays ``[loop_start, loop_end)``);
    ``sample_rate`` is in Hz, ``root_key`` the MIDI key recorded at the sample's own pitch, ``pitch_correction``
    in cents.
    """

    name: str
    start: int
    end: int
    loop_start: int
    loop_end: int
    sample_rate: int
    root_key: int
    pitch_correction: int


@dataclass(frozen=True)
class Zone:
    """One sample that sounds for a note: its :class:`SampleHeader` and the merged generators
    ``{generator number: value}`` (instrument values absolute, preset values already added, SF2 §9.4)."""

    sample: SampleHeader
    generators: dict[int, int]

    def get(self, generator: int) -> int:
        """The value of ``generator`` (its SF2 §8.1.3 default, usually 0, when unset)."""
        return self.generators.get(generator, DEFAULTS.get(generator, 0))

    @property
    def loops(self) -> bool:
        """Whether the sample loops while the key is held (sampleModes 1 or 3, SF2 §8.1.2 no. 54)."""
        return self.get(SAMPLE_MODES) in (1, 3)


@dataclass(frozen=True)
class _BagZone:
    """A zone of a preset or an instrument as written in the file: its generators, key and velocity range."""

    generators: dict[int, int]
    key_range: tuple[int, int] = (0, 127)
    vel_range: tuple[int, int] = (0, 127)

    def covers(self, key: int, velocity: int) -> bool:
        return self.key_range[0] <= key <= self.key_range[1] and self.vel_range[0] <= velocity <= self.vel_range[1]


@dataclass
class SoundFont:
    """A parsed SoundFont: the sample data and the hydra, ready to answer :meth:`zones`.

    Attributes:
        path: the file it was read from.
        samples: ``smpl`` as int16 ``(n_points,)``, every sample one after the other.
        sample_headers: the ``shdr`` records, indexed by a zone's sampleID.
        presets: ``{(bank, program): (name, zones)}``; zones keep the global zone merged in (SF2 §7.3).
        instruments: ``[(name, zones)]`` indexed by a preset zone's instrument generator.
    """

    path: Path
    samples: np.ndarray
    sample_headers: list[SampleHeader]
    presets: dict[tuple[int, int], tuple[str, list[_BagZone]]]
    instruments: list[tuple[str, list[_BagZone]]]
    _zone_cache: dict[tuple[int, int, int, int], list[Zone]] = field(default_factory=dict, repr=False)

    def preset_name(self, bank: int, program: int) -> str:
        """The preset's name, or a ``KeyError`` that lists what the bank holds."""
        return self._preset(bank, program)[0]

    def _preset(self, bank: int, program: int) -> tuple[str, list[_BagZone]]:
        if (bank, program) not in self.presets:
            held = sorted(p for b, p in self.presets if b == bank)
            raise KeyError(f"{self.path.name} has no preset for bank {bank}, program {program} "
                           f"(bank {bank} holds programs {held})")
        return self.presets[(bank, program)]

    def zones(self, bank: int, program: int, key: int, velocity: int) -> list[Zone]:
        """The sample zones that sound when ``key`` (MIDI 0-127) is struck at ``velocity`` (1-127) on preset
        ``(bank, program)``: every preset zone covering the key and velocity, then every zone of its
        instrument covering them (SF2 §9.4: layers all sound; a stereo pair gives two zones).

        Instrument generators override the instrument's global zone; preset generators (global, then zone)
        are *added* to them, except the ones a preset may not set (SF2 §8.5). Results are cached per call.
        """
        cache_key = (bank, program, key, velocity)
        if cache_key not in self._zone_cache:
            self._zone_cache[cache_key] = self._resolve(bank, program, key, velocity)
        return self._zone_cache[cache_key]

    def _resolve(self, bank: int, program: int, key: int, velocity: int) -> list[Zone]:
        found = []
        for preset_zone in self._preset(bank, program)[1]:
            if not preset_zone.covers(key, velocity) or INSTRUMENT not in preset_zone.generators:
                continue
            for inst_zone in self.instruments[preset_zone.generators[INSTRUMENT]][1]:
                if not inst_zone.covers(key, velocity) or SAMPLE_ID not in inst_zone.generators:
                    continue
                merged = dict(inst_zone.generators)
                for gen, amount in preset_zone.generators.items():
                    if gen not in _INSTRUMENT_ONLY and gen not in (INSTRUMENT, *_RANGE_GENERATORS):
                        merged[gen] = merged.get(gen, DEFAULTS.get(gen, 0)) + amount
                found.append(Zone(self.sample_headers[merged[SAMPLE_ID]], merged))
        return found


# ---- reading the RIFF file -----------------------------------------------------------------------------------


def default_soundfont_path() -> Path:
    """The path of ``TimGM6mb.sf2`` in the installed ``pretty_midi`` package (its package data).

    Raises :class:`SoundFontNotFoundError` saying what to install when pretty_midi (or the file) is missing.
    """
    try:
        import pretty_midi  # only for where it lives: the SoundFont is package data beside its __init__.py
    except ImportError:
        raise SoundFontNotFoundError(
            f"the music v2 renderer plays the General MIDI SoundFont {DEFAULT_SOUNDFONT} that the pretty_midi "
            "package carries, and pretty_midi is not installed: run `pip install pretty_midi` (it is a "
            "dependency of course_lib: `pip install -e .` installs it)") from None
    path = Path(pretty_midi.__file__).parent / DEFAULT_SOUNDFONT
    if not path.is_file():
        raise SoundFontNotFoundError(f"pretty_midi is installed but {path} is missing; reinstall it with "
                                     "`pip install --force-reinstall pretty_midi`")
    return path


def _chunks(data: bytes, start: int, stop: int) -> dict[str, tuple[int, int]]:
    """The RIFF sub-chunks between byte offsets ``start`` and ``stop``: ``{id: (data offset, size)}``.

    A LIST chunk is keyed by its list type (``"sdta"``, ``"pdta"``); chunks are padded to even sizes.
    """
    found = {}
    pos = start
    while pos + 8 <= stop:
        chunk_id, size = data[pos:pos + 4].decode("latin-1"), struct.unpack_from("<I", data, pos + 4)[0]
        if chunk_id == "LIST":
            found[data[pos + 8:pos + 12].decode("latin-1")] = (pos + 12, size - 4)
        else:
            found[chunk_id] = (pos + 8, size)
        pos += 8 + size + (size & 1)
    return found


def _records(data: bytes, where: tuple[int, int], fmt: str) -> list[tuple]:
    """The fixed-size records of one hydra table (``struct`` format ``fmt``, little-endian)."""
    return list(struct.iter_unpack("<" + fmt, data[where[0]:where[0] + where[1]]))


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


def _generator_value(oper: int, raw: bytes) -> int | tuple[int, int]:
    """A generator's 2-byte amount (SF2 §7.5): a (low, high) range, an unsigned or a signed 16-bit value."""
    if oper in _RANGE_GENERATORS:
        return raw[0], raw[1]
    return struct.unpack("<H" if oper in _UNSIGNED_GENERATORS else "<h", raw)[0]


def _bag_zones(bags: list[tuple], gens: list[tuple[int, bytes]], first_bag: int, last_bag: int,
               terminal: int) -> list[_BagZone]:
    """The zones ``first_bag .. last_bag - 1`` of one preset or instrument, the global zone merged in.

    ``bags`` are ``(first generator, first modulator)`` rows; zone ``b`` owns generators ``bags[b][0]`` to
    ``bags[b + 1][0] - 1``. A first zone whose last generator is not ``terminal`` (instrument for presets,
    sampleID for instruments) is the *global* zone: its generators are the defaults of the others (SF2 §7.3,
    §7.9); any later zone without ``terminal`` is ignored.
    """
    zones, global_gens = [], {}
    for b in range(first_bag, last_bag):
        gens_of_zone = {oper: _generator_value(oper, raw) for oper, raw in gens[bags[b][0]:bags[b + 1][0]]}
        last_oper = gens[bags[b + 1][0] - 1][0] if bags[b + 1][0] > bags[b][0] else None
        if last_oper != terminal:
            if b == first_bag:
                global_gens = gens_of_zone
            continue
        merged = {**global_gens, **gens_of_zone}
        key_range, vel_range = merged.pop(KEY_RANGE, (0, 127)), merged.pop(VEL_RANGE, (0, 127))
        zones.append(_BagZone(merged, key_range, vel_range))
    return zones


def read_soundfont(path: str | os.PathLike) -> SoundFont:
    """Parse a SoundFont 2 file (uncached; see :func:`load_soundfont`).

    Reads the RIFF chunks ``sdta/smpl`` (int16 samples, SF2 §6.1) and the ``pdta`` hydra (SF2 §7.2-7.10):
    ``phdr`` (38-byte preset headers), ``pbag``/``ibag`` (4-byte zone indices), ``pgen``/``igen`` (4-byte
    generators), ``inst`` (22-byte instrument headers), ``shdr`` (46-byte sample headers). Each table ends with
    a terminal record, which is dropped. A file that is not a SoundFont raises ``ValueError``.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise ValueError(f"{path} is not a SoundFont 2 file (no RIFF 'sfbk' header)")
    top = _chunks(data, 12, len(data))
    if "sdta" not in top or "pdta" not in top:
        raise ValueError(f"{path} lacks the sdta or pdta list of a SoundFont 2 file")
    sdta = _chunks(data, top["sdta"][0], sum(top["sdta"]))
    hydra = _chunks(data, top["pdta"][0], sum(top["pdta"]))
    missing = {"phdr", "pbag", "pgen", "inst", "ibag", "igen", "shdr"} - set(hydra)
    if "smpl" not in sdta or missing:
        raise ValueError(f"{path} lacks SoundFont chunk(s) {sorted(missing | ({'smpl'} - set(sdta)))}")

    offset, size = sdta["smpl"]
    samples = np.frombuffer(data, dtype="<i2", count=size // 2, offset=offset).copy()
    headers = [SampleHeader(_name(name), start, end, loop_start, loop_end, rate, root, correction)
               for name, start, end, loop_start, loop_end, rate, root, correction, _link, _type
               in _records(data, hydra["shdr"], "20s5IBbHH")[:-1]]
    pgens = [(oper, raw) for oper, raw in _records(data, hydra["pgen"], "H2s")]
    igens = [(oper, raw) for oper, raw in _records(data, hydra["igen"], "H2s")]
    pbags, ibags = _records(data, hydra["pbag"], "HH"), _records(data, hydra["ibag"], "HH")

    inst_rows = _records(data, hydra["inst"], "20sH")
    instruments = [(_name(inst_rows[i][0]), _bag_zones(ibags, igens, inst_rows[i][1], inst_rows[i + 1][1], SAMPLE_ID))
                   for i in range(len(inst_rows) - 1)]
    preset_rows = _records(data, hydra["phdr"], "20sHHHIII")
    presets = {}
    for i in range(len(preset_rows) - 1):
        name, program, bank, first_bag = preset_rows[i][:4]
        presets[(bank, program)] = (_name(name), _bag_zones(pbags, pgens, first_bag, preset_rows[i + 1][3],
                                                            INSTRUMENT))
    return SoundFont(path, samples, headers, presets, instruments)


@functools.lru_cache(maxsize=4)
def _load_cached(resolved: Path, mtime_ns: int) -> SoundFont:
    return read_soundfont(resolved)


def load_soundfont(path: str | os.PathLike | None = None) -> SoundFont:
    """The parsed SoundFont at ``path`` (default: :func:`default_soundfont_path`), read once per file.

    The cache (an ``lru_cache`` of four files) is keyed by the resolved path and modification time, so an
    edited file is read again. Parsing the 6 MB TimGM6mb takes a few tens of milliseconds.
    """
    resolved = (default_soundfont_path() if path is None else Path(path)).expanduser().resolve()
    if not resolved.is_file():
        raise SoundFontNotFoundError(f"no SoundFont file at {resolved}")
    return _load_cached(resolved, resolved.stat().st_mtime_ns)


# ---- playing a note ------------------------------------------------------------------------------------------


def timecents_to_seconds(timecents: float) -> float:
    """``2 ** (timecents / 1200)`` seconds (SF2 §8.1.1); -32768, the smallest value, means 0 s."""
    return 0.0 if timecents <= -32768 else float(2.0 ** (timecents / 1200.0))


def velocity_gain(velocity: int) -> float:
    """Linear amplitude of a MIDI velocity (1-127) by the default modulator of SF2 §8.4.1: 960 cB times the
    negative concave curve ``-(20/96)·log10((velocity/127)²)``, i.e. ``-40·log10(velocity/127)`` dB, which
    is the amplitude ``(velocity / 127)²``."""
    return (min(max(int(velocity), 1), 127) / 127.0) ** 2


@dataclass(frozen=True)
class VolumeEnvelope:
    """The DAHDSR volume envelope of a zone (SF2 §8.1.2 nos. 33-40), times in seconds.

    ``delay`` of silence, a linear ``attack`` to full level, ``hold`` at full level, then a ``decay`` falling
    linearly in dB at 100 dB per ``decay`` seconds until ``sustain_db`` (<= 0 dB, full level 0), and after the
    key is released a fall at 100 dB per ``release`` seconds from wherever the envelope was.
    """

    delay: float
    attack: float
    hold: float
    decay: float
    sustain_db: float
    release: float

    @classmethod
    def of_zone(cls, zone: Zone, key: int) -> VolumeEnvelope:
        """The envelope of ``zone`` for ``key``: hold and decay scale with the key by keynumToVolEnvHold /
        keynumToVolEnvDecay (timecents per key number away from middle C, key 60; SF2 §8.1.2 nos. 39, 40)."""
        def seconds(generator: int, per_key: int | None = None) -> float:
            key_scaling = zone.get(per_key) * (60 - key) if per_key is not None else 0
            return timecents_to_seconds(zone.get(generator) + key_scaling)

        sustain_cb = min(max(zone.get(SUSTAIN_VOL_ENV), 0), 1000)  # SF2 §8.1.3: below 0 is 0, 1000 is silent
        return cls(delay=seconds(DELAY_VOL_ENV), attack=seconds(ATTACK_VOL_ENV),
                   hold=seconds(HOLD_VOL_ENV, KEY_TO_VOL_ENV_HOLD), decay=seconds(DECAY_VOL_ENV, KEY_TO_VOL_ENV_DECAY),
                   sustain_db=-sustain_cb / 10.0, release=seconds(RELEASE_VOL_ENV))

    def held(self, t: np.ndarray) -> np.ndarray:
        """Linear amplitude ``(n,)`` at times ``t`` (s, from the note-on) while the key stays down."""
        ramp = np.clip((t - self.delay) / max(self.attack, 1e-6), 0.0, 1.0)  # silent through the delay
        decay_start = self.delay + self.attack + self.hold
        fall_db = np.maximum(t - decay_start, 0.0) * (-SILENCE_DB / max(self.decay, 1e-6))
        level_db = np.maximum(-fall_db, self.sustain_db)
        return ramp * 10.0 ** (level_db / 20.0)

    def released(self, t: np.ndarray, note_off: float) -> np.ndarray:
        """Linear amplitude ``(n,)`` at times ``t`` (s) when the key is released at ``note_off`` s: the held
        envelope, then from its level at ``note_off`` a fall of 100 dB per ``release`` seconds."""
        level_at_off = float(self.held(np.array([note_off]))[0])
        after = np.maximum(t - note_off, 0.0) * (SILENCE_DB / max(self.release, 1e-6))
        fading = level_at_off * 10.0 ** (after / 20.0)
        return np.where(t < note_off, self.held(t), fading)

    def release_seconds(self, floor_db: float = -60.0) -> float:
        """How long after the note-off the envelope takes to fall by ``-floor_db`` dB (s)."""
        return self.release * floor_db / SILENCE_DB


def pitch_step(zone: Zone, key: int, output_rate: int) -> float:
    """How many source samples to advance per output sample for ``key``: the resampling ratio.

    ``2 ** (cents / 1200) · sample_rate / output_rate`` with ``cents = (key - root)·scaleTuning +
    100·coarseTune + fineTune + pitchCorrection``, where ``root`` is overridingRootKey when set, else the
    sample's own root key (SF2 §8.1.2 nos. 51, 52, 56, 58; §7.10). Unit-less.
    """
    root = zone.get(OVERRIDING_ROOT_KEY)
    root = zone.sample.root_key if root < 0 else root
    cents = ((key - root) * zone.get(SCALE_TUNING) + 100 * zone.get(COARSE_TUNE) + zone.get(FINE_TUNE)
             + zone.sample.pitch_correction)
    return float(2.0 ** (cents / 1200.0) * zone.sample.sample_rate / output_rate)


def _sample_bounds(zone: Zone) -> tuple[int, int, int, int]:
    """``(start, end, loop_start, loop_end)`` in sample data points after the zone's address offsets
    (fine offsets plus 32768 times the coarse ones, SF2 §8.1.2 nos. 0-4, 12, 45, 50). Not yet clipped to the
    sample data: :func:`render_zone` does that."""
    s, g = zone.sample, zone.get
    start = s.start + g(START_OFFSET) + 32768 * g(START_COARSE_OFFSET)
    end = s.end + g(END_OFFSET) + 32768 * g(END_COARSE_OFFSET)
    loop_start = s.loop_start + g(LOOP_START_OFFSET) + 32768 * g(LOOP_START_COARSE_OFFSET)
    loop_end = s.loop_end + g(LOOP_END_OFFSET) + 32768 * g(LOOP_END_COARSE_OFFSET)
    return start, end, loop_start, loop_end


def _anti_alias(source: np.ndarray, step: float, taps: int = 31) -> np.ndarray:
    """Low-pass ``source`` below the output's Nyquist frequency when it is read faster than one sample per
    output sample (``step > 1``): linear interpolation alone would fold everything above it back into the
    audible band. A Hann-windowed sinc of ``taps`` taps, cut-off ``0.5 / step`` cycles per source sample."""
    if step <= 1.0:
        return source
    cutoff = 0.5 / step
    n = np.arange(taps) - (taps - 1) / 2
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(taps)
    return np.convolve(source, kernel / kernel.sum(), mode="same")


def source_positions(n: int, step: float, loop: tuple[int, int] | None) -> np.ndarray:
    """Where each of ``n`` output samples reads the source ``(n,)`` (float, in source samples from its start).

    Position ``i · step``; with ``loop = (loop_start, loop_end)`` a position past ``loop_end`` wraps back
    into ``[loop_start, loop_end)`` (SF2 §8.1.2 no. 54), so the note sounds as long as it is held; without a
    loop, positions run past the sample's end (:func:`_interpolate` reads silence there).
    """
    pos = np.arange(n) * step
    if loop is not None:
        loop_start, loop_end = loop
        past = pos >= loop_end
        pos[past] = loop_start + np.mod(pos[past] - loop_start, loop_end - loop_start)
    return pos


def _interpolate(source: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``source`` at fractional positions ``pos``; zero past its last sample."""
    inside = pos < len(source) - 1
    i = np.floor(pos[inside]).astype(np.int64)
    frac = pos[inside] - i
    out = np.zeros(len(pos))
    out[inside] = source[i] * (1.0 - frac) + source[i + 1] * frac
    return out


def render_zone(soundfont: SoundFont, zone: Zone, key: int, velocity: int, hold_seconds: float,
                output_rate: int, max_release_seconds: float = 1.0) -> np.ndarray:
    """One zone's sample played at ``key`` for ``hold_seconds`` and released: float64 ``(n,)`` at
    ``output_rate`` Hz, ``n`` covering the hold plus the release (down to -60 dB, at most
    ``max_release_seconds``). Level: full scale is 1; initialAttenuation (cB, SF2 §8.1.2 no. 48) and
    :func:`velocity_gain` applied."""
    start, end, loop_start, loop_end = _sample_bounds(zone)
    start, end = max(start, 0), min(end, len(soundfont.samples))  # a bad offset must not read another sample
    envelope = VolumeEnvelope.of_zone(zone, key)
    tail = min(envelope.release_seconds(), max_release_seconds)
    n = int(np.ceil((hold_seconds + tail) * output_rate))
    if end - start < 2:
        return np.zeros(n)
    step = pitch_step(zone, key, output_rate)
    source = _anti_alias(soundfont.samples[start:end].astype(np.float64) / 32768.0, step)
    loop = (loop_start - start, loop_end - start)
    if not (zone.loops and 0 <= loop[0] < loop[1] <= len(source)):
        loop = None  # a one-shot sample, or loop points outside it: play it once
    wave = _interpolate(source, source_positions(n, step, loop))
    t = np.arange(n) / output_rate
    gain = 10.0 ** (-max(zone.get(INITIAL_ATTENUATION), 0) / 200.0) * velocity_gain(velocity)
    return wave * envelope.released(t, hold_seconds) * gain


def render_note(bank: int, program: int, key: int, velocity: int, hold_seconds: float, output_rate: int,
                soundfont: SoundFont | None = None, max_release_seconds: float = 1.0) -> np.ndarray:
    """Play MIDI ``key`` at ``velocity`` on preset ``(bank, program)`` held for ``hold_seconds`` s.

    Returns mono float64 ``(n,)`` at ``output_rate`` Hz: the sum of every zone that sounds (layers and the
    two halves of a stereo pair, pan ignored), ``n`` long enough for the longest release (capped at
    ``max_release_seconds``). Drums: ``bank=128`` (:data:`PERCUSSION_BANK`), the key picks the drum.
    ``soundfont`` defaults to :func:`load_soundfont` (``TimGM6mb.sf2``). Raises ``KeyError`` for a preset the
    file lacks; a key no zone covers gives silence of the held length.
    """
    sf = load_soundfont() if soundfont is None else soundfont
    zones = sf.zones(bank, program, key, velocity)
    parts = [render_zone(sf, zone, key, velocity, hold_seconds, output_rate, max_release_seconds) for zone in zones]
    out = np.zeros(max([len(p) for p in parts], default=int(np.ceil(hold_seconds * output_rate))))
    for part in parts:  # one or two zones per note
        out[:len(part)] += part
    return out
