"""
The control plane: what an operator (or another process) can ask of the
running service, as plain operations (:mod:`callhome.control.operations`),
and the HTTP API that exposes them (:mod:`callhome.control.api`).
"""
