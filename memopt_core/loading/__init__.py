"""Loading models and texts: bundled offline assets, local folders, the Hugging Face hub, saved models."""
