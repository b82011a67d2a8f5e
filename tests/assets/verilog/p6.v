`define W 8
`define ADDR 0
module p6(input [7:0] y, output [31:0] x, z);
  assign x = (y & `W'h1f);
  assign z = 32'h`ADDR;
endmodule
