"""Pretrained weights to Keras: torchvision state dicts, dlib's face ResNet, converted-weight files."""
