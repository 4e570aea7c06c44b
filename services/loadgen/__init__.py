"""Call simulator / load generator for the media bridge (``lupita call``).

Modules: ``synth`` (Spanish telephone speech with espeak-ng + sox, WAV I/O), ``frames``
(stereo audio -> per-leg 20 ms frames), ``client`` (one call over the gRPC stream),
``runner`` (N concurrent calls and their report), ``cli`` (the command).
"""
