"""What ships with the library besides the models: the deterministic synthetic data generator
(`mwmae.builtin.synth`, its sounds in `sounds` and optional espeak-ng/fluidsynth voices in
`external`), the log-mel baseline (`logmel`, a HEAR module, and its probe in `logmel_probe`)
and the end-to-end demo (`demo`)."""
