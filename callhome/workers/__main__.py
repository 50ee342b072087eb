"""``python -m callhome.workers``: a worker process (see L{callhome.workers.main})."""

from callhome.workers.main import main

main()
