"""The research workbench: notebook arms, statistics, figures, the ratio explorer, reports, sweeps, the suite.

May import anything below it. Only `arms` (and the toy report's runner) start trainings; views render run dirs.
"""
