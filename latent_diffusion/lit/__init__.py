"""Lightning glue: the LatentDiffusion module, EMA, callbacks and the run export."""
