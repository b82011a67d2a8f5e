module p3(input a, b, output reg x);
  always @(
`ifdef F
   a or
`endif
   b) x = 1;
endmodule
