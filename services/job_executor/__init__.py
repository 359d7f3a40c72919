"""job-executor: dispatches ready jobs to pilots (REST and RabbitMQ), watches them by heartbeat, retries,
fences stale pilots, registers outputs in FILE_DAT and the DSM, and ends tasks."""
