"""How a pilot process ends, for the daemon that launches pilots one after another."""
EXIT_OK = 0  # lifetime over, or stopped
EXIT_FAILURE = 1  # crashed
EXIT_NO_WORK = 3  # idle past its limit
EXIT_DEAD = 4  # the job-executor declared it dead or ended it
EXIT_REFUSED = 5  # its credential is refused (unknown, revoked, or not allowed for this node): relaunching is futile
EXIT_RUNTIME = 6  # its payload runtime does not work on this node (the sentinel failed): relaunching is futile
