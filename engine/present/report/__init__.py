"""The dataset report of a sweep folder (`build.build_report`): rows -> figures, tables, one HTML page."""
