"""
The command-line tools: ``callhome`` (:mod:`callhome.tools.cli`, a client
of the management API) and its one-shot ``callhome listen``
(:mod:`callhome.tools.listen`).
"""
