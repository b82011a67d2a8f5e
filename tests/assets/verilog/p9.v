module p9(input clk);
  reg a;
  always @(posedge clk) begin
`ifdef F
    a <= 1;
`else
    a <= 0;
`endif
  end
endmodule
