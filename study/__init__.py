"""The whole study from one command (configs/study.py): stages in study/run.py, the report in study/report.py."""
