"""Speech synthesis with eSpeak NG, from the ``espeakng-loader`` wheel (the shared library
and its voice data in site-packages: no system package, no download at run time).

    with Speaker() as speak:
        word = speak("7", voice="de+f3", rate=160, pitch=60)   # float32 [S] at SAMPLE_RATE

libespeak-ng keeps state between calls in its globals (its pitch-flutter phase, among
others), so the same call gives different samples the second time; a :class:`Speaker`
loads the library afresh and unloads it on exit, so that a video's words do not depend on
the videos its process wrote before. The samples are still not exactly reproducible: the
library also reads memory it has not initialised (measured: the same call differs after
unrelated work in the process, and differently under glibc's ``M_PERTURB``), so a word's
timing and waveform vary slightly between runs. One speaker is open per process at a time
(a lock); the corpus writers use one process per core.
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading

import numpy as np

SAMPLE_RATE = 22_050  # what libespeak-ng synthesises at
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAMETERS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()


class SpeechError(RuntimeError):
    """eSpeak NG is missing or refused a request; the message says which and what to do."""


class Speaker:
    """A freshly loaded eSpeak NG; ``speaker(text, voice, ...)`` inside ``with``."""

    def __enter__(self) -> Speaker:
        try:
            import espeakng_loader
        except ImportError:
            raise SpeechError("the spoken-digit corpus needs eSpeak NG: pip install espeakng-loader") from None
        _lock.acquire()
        try:
            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
            self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
            if rate != SAMPLE_RATE:
                raise SpeechError(f"libespeak-ng failed to start (espeak_Initialize returned {rate})")
            self.chunks: list[np.ndarray] = []
            # Kept on self: ctypes must hold the callback for as long as the library may call it.
            self.callback = _CALLBACK(self._collect)
            self.lib.espeak_SetSynthCallback(self.callback)
            self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            self.lib.espeak_Synth.argtypes = [
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_void_p,
                ctypes.c_void_p,
            ]
        except BaseException:
            self._unload()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lib.espeak_Terminate()
        self._unload()

    def _unload(self) -> None:
        lib = getattr(self, "lib", None)
        if lib is not None:
            # The last handle closed unloads the library, and with it eSpeak NG's globals.
            _ctypes.dlclose(lib._handle)
            self.lib = None
        _lock.release()

    def _collect(self, wav, count: int, events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0: go on synthesising

    def __call__(
        self, text: str, voice: str, *, rate: int = 175, pitch: int = 50, pitch_range: int = 50, volume: int = 100
    ) -> np.ndarray:
        """``text`` spoken by eSpeak NG ``voice`` (a language, optionally ``+variant``, e.g.
        ``en+m3``): float32 [S] in [-1, 1] at :data:`SAMPLE_RATE`, leading and trailing
        silence trimmed. ``rate`` in words per minute (80-450), ``pitch`` and ``pitch_range``
        0-100."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SpeechError(f"eSpeak NG has no voice {voice!r}")
        for name, value in (("rate", rate), ("pitch", pitch), ("range", pitch_range), ("volume", volume)):
            self.lib.espeak_SetParameter(_PARAMETERS[name], int(value), 0)
        self.chunks = []
        data = text.encode() + b"\0"
        status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise SpeechError(f"eSpeak NG failed to speak {text!r} with voice {voice!r} (status {status})")
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        samples = samples.astype(np.float32) / 32768.0
        loud = np.flatnonzero(np.abs(samples) > 1e-3)
        return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def synthesize(text: str, voice: str, **parameters: int) -> np.ndarray:
    """One utterance from a fresh :class:`Speaker` (the same arguments, the same samples)."""
    with Speaker() as speak:
        return speak(text, voice, **parameters)
