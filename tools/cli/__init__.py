"""The ``wms`` command line: tasks, jobs, pilots, dead letters and the demo, through the task-manager API."""
