"""Tools on a finished run: lookahead diagnostic, task-type and expert surveys, hot-path and parallel
benchmarks, the GPU check and the fewer-annotations experiment.
"""
