"""Speed-ups on a loaded model: ``apply`` carries out what ``plan.speed`` chose; ``tuning``
keeps coordinate-descent tuned kernels across processes (a backport to torch 2.11/2.12);
``artifacts`` keeps compiled code as files (``artifact_files``) that later processes load;
``timings`` records what this machine measured, for ``compile: auto``."""
