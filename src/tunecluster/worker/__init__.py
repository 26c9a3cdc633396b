"""The worker role: claims trials, trains them in trial processes, reports every epoch."""
