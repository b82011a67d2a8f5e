// Testbench for the smoke item "counter4" (written for this project).
`timescale 1ns/1ps
module tb;
  reg clk = 1'b0, rst = 1'b1, en = 1'b0;
  wire [3:0] count;
  integer errors = 0;
  integer i;
  counter4 dut (.clk(clk), .rst(rst), .en(en), .count(count));
  always #5 clk = ~clk;
  initial begin
    @(negedge clk); @(negedge clk);
    if (count !== 4'd0) errors = errors + 1;           // synchronous reset
    rst = 1'b0;
    @(negedge clk);
    if (count !== 4'd0) errors = errors + 1;           // holds while en is low
    en = 1'b1;
    for (i = 1; i <= 17; i = i + 1) begin
      @(negedge clk);
      if (count !== i[3:0]) errors = errors + 1;       // counts up and wraps 15 -> 0
    end
    en = 1'b0;
    @(negedge clk);
    if (count !== 4'd1) errors = errors + 1;           // holds again
    rst = 1'b1;
    @(negedge clk);
    if (count !== 4'd0) errors = errors + 1;
    if (errors == 0) $display("TEST PASSED"); else $display("TEST FAILED: %0d errors", errors);
    $finish;
  end
endmodule
