"""Static INT8 quantization in QDQ format: plan, calibrate, insert, verify."""
