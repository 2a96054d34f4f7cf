"""Annotate a photo collection: streaming, resumable Parquet output and a composition audit.

``inputs`` lists what to read, ``stages`` turns a part of inputs into rows (``schema``),
``engine_local`` / ``engine_ray`` run the stages, ``manifest`` commits parts so a killed run
resumes exactly, ``audit`` / ``report`` estimate the composition, ``confusion`` measures the
val confusion matrix the adjusted estimate needs. The CLI is ``ff_keras.cli.annotate``.
"""
