"""Every file a run writes and reads: the names and JSON records of a
model directory (`artifacts`), the hold-out, validation and labelled
subsets on disk (`splits`), and the saved encoders for transfer
(`transfer.load_encoder`)."""
