#ifdef X
module p11; endmodule
#endif
