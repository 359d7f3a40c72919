"""The shared PostgreSQL schema (TASK_DAT, JOB_DAT, PILOT_DAT, FILE_DAT, outbox) and the async engine."""
