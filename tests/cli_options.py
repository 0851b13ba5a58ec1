"""Command-line options shared by the CLI tests: a tiny fabric and a short search, so each run takes seconds."""
TINY = ["--supernet-config", "layers=3", "channels=8", "--epochs", "2", "--finetune-epochs", "1"]
