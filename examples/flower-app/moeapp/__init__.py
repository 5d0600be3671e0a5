"""moeapp: MoE fine-tuning with hfedmoe's HFedMoE Strategy, laid out like `flwr new` makes apps."""
