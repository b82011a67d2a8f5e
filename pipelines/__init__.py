"""The Ray composition of each pipeline, one module per job: the layer between ``jobs/`` and the packages.

``corpus/``, ``synthesis/`` and ``training/`` hold stages and plain functions that know nothing of
Ray; a module here wires them into Ray Data, Ray Train or Ray Tune, and exposes the job's config
class, its ``SPEC`` (:class:`chipforge.job.JobSpec`) and its body ``run(cfg, run) -> report``.
"""
