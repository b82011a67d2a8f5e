module p4(
  input a
`ifdef F
  , input b
`endif
  );
endmodule
