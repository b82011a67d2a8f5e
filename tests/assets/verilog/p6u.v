module p6u(input [7:0] y, output [31:0] x, z);
  assign x = (y & `WU'h1f);
  assign z = 32'h`ADDRU;
endmodule
