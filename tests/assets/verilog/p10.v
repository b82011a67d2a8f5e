`define M(a) (a+1)
module p10(input y, output x);
  assign x = `M(y);
endmodule
