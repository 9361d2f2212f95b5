"""What people look at: per-study HTML reports with heat maps, EDA figures of a dataset, and
slice panels."""
