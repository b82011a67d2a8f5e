`define R 7:0
module p7(input [`R] a, output [`R] x);
  wire [`R] w;
endmodule
