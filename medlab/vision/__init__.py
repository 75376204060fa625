"""Image classification: the shared classifier engine, skin and lung-CT tasks, Grad-CAM, input gates, evaluation math."""
