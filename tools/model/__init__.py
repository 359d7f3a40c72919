"""The workload model of the SPD online filter (docs/workload-model.md): detector figures and per-stage parameters
in, per-stage file, job, byte and core rates out."""
