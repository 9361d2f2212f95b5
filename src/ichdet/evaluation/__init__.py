"""The competition metric and the clinical ones (AUC, sensitivity/specificity, operating
thresholds), on arrays (``metrics``) and on files (``evaluate``)."""
