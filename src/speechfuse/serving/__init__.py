"""How a trained model is used: predict, evaluate, speaker-verification trials, export."""
