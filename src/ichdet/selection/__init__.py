"""Series selection and input checks: what a study's series are, which one the model reads,
how thin series are read (slabs), and when a study cannot be assessed. Sits right after the
header read (``ichdet.data.index``) and before any pixel is decoded for prediction."""
