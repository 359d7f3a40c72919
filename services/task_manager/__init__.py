"""task-manager: the WFMS's entry point (register, cancel, reprioritise, pause/resume; progress, reports, files)."""
