"""Layer 5, evaluation (imports the layers below): ``simulated`` (metrics of Sec. 4 on the
simulated test set), ``real`` (labelled real files), ``finetune`` (fine-tuning on real labelled
sequences, k-fold), ``plots`` (the paper's figures)."""
