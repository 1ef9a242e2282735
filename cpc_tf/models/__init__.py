"""The model core, Keras 3 only (`keras`, `keras.ops`): the ResNet-v2
encoders (`encoders`), the masked PixelCNN context network (`context`),
InfoNCE (`losses`) and the CPC model (`cpc`). Nothing here imports
training, data or file code."""
