"""The pilot: a daemon on each worker node and the pilot application it launches (built in the dispatch issue)."""
