module p2(input a, b, output x);
  assign x = a
`ifdef F
  || b
`endif
  ;
endmodule
