"""The benchmark harness behind ``make bench``: lambdatorch against the handler people write today.

``python -m bench`` (``__main__``) builds the inputs (``tree``), runs the preprocessing benchmark
(``preprocess``), then for each run and contender (``contenders``) the cold-start probes
(``probes``) and a session (``sessions``) against a local Lambda Runtime API (``runtime_api``), and
writes the report (``report``). Nothing here is imported by lambdatorch or its tests.
"""
