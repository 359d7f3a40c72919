"""job-manager: registers generated job chunks in JOB_DAT/FILE_DAT in bulk, makes them ready for the
job-executor, and serves job and file metadata to the other services."""
