"""``python -m weam_ds.report --study STUDY_DIR --out REPORT_DIR [--force]``"""
from weam_ds.report.cli import main

raise SystemExit(main())
