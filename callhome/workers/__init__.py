"""
More than one core: ``workers: N`` serves calls from N processes.

A Twisted reactor uses one core.  With ``workers: N`` the main process
(the one twistd runs) binds the listeners, opens (and migrates) the
database, serves the API and runs retention, and serves calls itself; it
also starts N-1 worker processes (``python -m callhome.workers``) that
inherit the listening sockets.  Every process accepts from the same
sockets, so the kernel hands each connection to whichever process accepts
first: a busy process takes fewer.

What keeps them one service:

* the store: each process writes its own results, events and device
  status to the same SQLite database (WAL; one writer at a time, the
  others wait up to 30 s), so ``/results`` and ``/events`` see every call;
* a channel per worker (L{Channel}: JSON messages over the worker's
  standard input and output) on which the worker
    - claims a device when it identifies one, and releases it when the call
      ends: the main process keeps one table of who holds which device, so
      ``duplicate_sessions`` holds across processes (a duplicate found in
      another process is refused, or the older session closed, moments
      after the claim);
    - reports, every second, the device statuses and quarantined keys that
      changed (the main process mirrors them for the API) and how many
      calls it has open;
    - forwards its log events, which the main process logs as its own with
      a ``worker`` field;
  and on which the main process asks a worker for its sessions, runs an
  API RPC or disconnect on a session the worker holds, passes on approvals
  and reloads, collects its metrics (added to the main process's own at
  ``/metrics``) and stops it (the same graceful stop as the main's).

A worker that dies is logged and started again (after 1 s, up to 30 s if
it keeps dying); its sessions are gone, and their devices are marked
disconnected.  A worker whose main process is gone stops.
"""
