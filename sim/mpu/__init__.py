"""A standalone simulation build of the MPU (`rtl.core.mpu.Mpu`) under the TINY config."""
