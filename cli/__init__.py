"""`mnist-jobs`: the outermost layer. It may import api, workers and service; nothing imports it."""
