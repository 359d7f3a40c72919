"""task-executor: turns tasks' datasets into chunks of jobs, several tasks at once, in proportion to priority,
without running further ahead of the pilots than a bound allows."""
